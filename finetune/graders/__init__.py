"""Graders: one engine for every OpenAI grader type, used by eval runs, ``/v1/fine_tuning/alpha/graders/*`` and
(next) reinforcement fine-tuning rewards.

    validate.check     a grader definition checked where it is created (400 with a param into the request)
    engine.GraderEngine   grade a batch of (sample, item) rows: string_check, text_similarity, python (sandbox),
                       score_model / label_model (a judge the caller connects), multi (a safe formula)
    templates          the one template renderer ({{item.*}}, {{sample.output_text}}, {{sample.output_json.*}}, …)
    messages           EvalItem messages → chat messages
    sandbox            the pool of locked-down Python interpreters (sandbox_child.py)
    embeddings         all-MiniLM-L6-v2 sentence embeddings for cosine, in a helper process
"""
