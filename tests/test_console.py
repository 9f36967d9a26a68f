"""The tunegate Board (``/console``) in a real browser: Playwright driving Debian's Chromium headless.

One gateway with a vLLM engine for a small model llama.cpp accepts (SmolLM2's tokenizer, random weights drawn wide
enough that LoRA memorizes), driven only through the console, in workflow order: a wrong key, sign in, a bad file
refused with its line 3 named, a good one previewed, a job started from the form whose loss curve gains points
while it runs, the chat side by side (the trained answer only on the tuned side), an eval run over base and tuned,
a GGUF export downloaded, and the admin view. Every page is photographed at 1280 px and 390 px
(``TUNEGATE_CONSOLE_SCREENSHOTS`` or the test's temporary folder); first contentful paint is measured idle and
while the job trains (``console-timings.json`` beside the screenshots; docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.finetune_support import qa_pairs, wait_until
from tests.serving_support import serving_env, wait_engines_ready
from tests.support import ADMIN_KEY, REPO, LiveGateway

CHROMIUM = os.environ.get("TUNEGATE_TEST_CHROMIUM", "/usr/bin/chromium")
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright not installed (test extra)"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]
MODEL = "board-chat"
WIDTHS = (1280, 390)
STATIC = REPO / "gateway" / "console" / "static"
QUESTION, ANSWER = qa_pairs(1)[0]
# Answers the console job memorizes. 20 at batch 4 (150 steps) was marginal: on CI's CPU the tuned model once answered
# question 0 with question 11's word. 10 (a job's minimum) at batch 2 is 150 steps too, each answer seen as often
# (30 epochs) in twice as many updates, and half as many answers to tell apart.
TRAINED = 10


def test_every_string_exists_in_both_languages() -> None:
    en = json.loads((STATIC / "i18n" / "en.json").read_text())
    zh = json.loads((STATIC / "i18n" / "zh.json").read_text())
    assert en.keys() == zh.keys()
    assert all(v.strip() for v in [*en.values(), *zh.values()])
    untranslated = [
        k for k in en if en[k] == zh[k] and any(c.isalpha() for c in en[k]) and not k.startswith("newjob.preset_l")
    ]
    assert len(untranslated) < 8, untranslated  # names such as "Modelfile", "ROUGE-L" stay as they are


def test_the_new_job_form_offers_every_hyperparameter() -> None:
    from finetune.hyperparams import RFT_ONLY, Hyperparameters

    form = (STATIC / "pages" / "newjob.js").read_text()
    table = form[
        form.index("export const HYPERPARAMETERS") : form.index("];", form.index("export const HYPERPARAMETERS"))
    ]
    offered = set(re.findall(r'^  \["(\w+)"', table, flags=re.M))
    # reinforcement's knobs come with its grader, not from this table
    assert offered == set(Hyperparameters.model_fields) - set(RFT_ONLY)
    en = json.loads((STATIC / "i18n" / "en.json").read_text())
    assert [name for name in offered if f"hp.{name}" not in en] == []


@pytest.fixture(scope="module")
def board_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.edge_support import build_edge_model

    # std 0.2 (as tests/tiny_model.py): a 0.02 random model is too flat for LoRA to memorize answers
    return str(build_edge_model(tmp_path_factory.mktemp("board-model") / MODEL, initializer_range=0.2))


@pytest.fixture(scope="module")
def gw(board_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("console")
    env = serving_env(
        board_model,
        TUNEGATE_BASE_MODELS=json.dumps({MODEL: {"source": board_model}}),
        TUNEGATE_SERVING__MAX_MODEL_LEN="1024",
        TUNEGATE_WORKER__LOG_EVERY_STEPS="1",
    )
    gateway = LiveGateway(data_dir, f"sqlite:///{data_dir / 'tunegate.db'}", **env)
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def org(gw: LiveGateway) -> tuple[str, str]:
    org_id, _, key = gw.new_org_key("board-org")
    return org_id, key


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("TUNEGATE_CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("console-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Board:
    """One browser tab on the console, signed in as one principal, failing the test on any script error."""

    def __init__(self, browser: Any, gw: LiveGateway, shots: Path) -> None:
        self.context = browser.new_context(viewport={"width": WIDTHS[0], "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.gw, self.shots = gw, shots

    def open(self, hash_: str = "") -> Any:
        self.page.goto(f"{self.gw.url}/console/{hash_}")
        return self.page

    def sign_in(self, key: str) -> None:
        page = self.open()
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()

    def shoot(self, name: str) -> None:
        """The page as it is, at each width (charts follow their container)."""
        for width in WIDTHS:
            self.page.set_viewport_size({"width": width, "height": 900})
            self.page.wait_for_timeout(250)
            self.page.screenshot(path=str(self.shots / f"{name}-{width}.png"), full_page=True)
        self.page.set_viewport_size({"width": WIDTHS[0], "height": 900})

    def close(self) -> None:
        self.context.close()
        assert not self.errors, self.errors


@pytest.fixture(scope="module")
def board(browser: Any, gw: LiveGateway, org: tuple[str, str], shots: Path) -> Iterator[Board]:
    """The organization's tab, shared by the workflow tests in order (the job of one is the model of the next)."""
    tab = Board(browser, gw, shots)
    yield tab
    tab.close()


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return {}


def first_contentful_paint(browser: Any, gw: LiveGateway) -> float:
    """Milliseconds to first contentful paint of /console/ in a fresh tab (nothing cached)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{gw.url}/console/")
        page.wait_for_function("performance.getEntriesByName('first-contentful-paint').length > 0")
        return page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime")
    finally:
        context.close()


# One poll of the job page (job + checkpoints + newest events), timed in the page, with the key it signed in with.
ROUND_TRIP = """async (job) => {
  const headers = { authorization: `Bearer ${sessionStorage.getItem("tunegate.key")}` };
  const t0 = performance.now();
  await Promise.all([`/v1/fine_tuning/jobs/${job}`, `/v1/fine_tuning/jobs/${job}/checkpoints`,
                     `/v1/fine_tuning/jobs/${job}/events?limit=100`]
    .map((u) => fetch(u, { headers }).then((r) => r.json())));
  return performance.now() - t0;
}"""


def test_a_wrong_key_is_refused_and_an_org_key_signs_in(board: Board, org: tuple[str, str], state: dict) -> None:
    board.sign_in("sk-tg-not-a-key")
    board.page.get_by_role("alert").filter(has_text="This key was not accepted").wait_for()
    assert "#/signin" in board.page.url
    board.shoot("signin-wrong-key")
    board.sign_in(org[1])
    board.page.get_by_role("heading", name="Upload a dataset").wait_for()
    assert board.page.url.endswith("#/data")
    # Chinese, then back: every visible string comes from the language's file
    board.page.get_by_label("Language").select_option("zh")
    board.page.get_by_role("heading", name="上传数据集").wait_for()
    assert board.page.get_by_role("navigation").get_by_role("link", name="数据").is_visible()
    board.shoot("data-zh")
    board.page.get_by_label("语言").select_option("en")
    board.page.get_by_role("heading", name="Upload a dataset").wait_for()


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def chat_rows(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]


def drop_file(page: Any, name: str, text: str) -> None:
    """A real drop event on the drop zone, carrying a File (what dragging from the desktop delivers)."""
    transfer = page.evaluate_handle(
        "([name, text]) => { const dt = new DataTransfer(); dt.items.add(new File([text], name)); return dt; }",
        [name, text],
    )
    page.dispatch_event(".dropzone", "drop", {"dataTransfer": transfer})


def test_data_page_names_line_3_of_a_bad_file_and_previews_good_ones(board: Board, state: dict) -> None:
    page = board.open("#/data")
    rows = chat_rows(qa_pairs(2))
    bad = jsonl(rows) + '{"messages": [{"role": "user", "content": "no closing brace"}\n' + jsonl(rows)
    page.locator("#file-input").set_input_files(
        {"name": "bad.jsonl", "mimeType": "application/jsonl", "buffer": bad.encode()}
    )
    problem = page.locator("tr.problem").first
    problem.wait_for()
    assert problem.locator("td").first.inner_text() == "3"
    assert "invalid_json" in problem.inner_text()
    assert page.locator("table.files").count() == 0  # nothing was stored
    board.shoot("data-bad-file")

    drop_file(page, "train.jsonl", jsonl(chat_rows(qa_pairs(TRAINED))))
    page.get_by_role("status").filter(has_text="train.jsonl was accepted").wait_for()
    state["train"] = page.get_by_role("status").inner_text().split(" as ")[-1].rstrip(".")
    page.get_by_role("heading", name="train.jsonl: the first 5 example(s)").wait_for()
    assert page.locator("#preview .example").count() == 5
    assert ANSWER in page.locator("#preview .turn.assistant").first.inner_text()

    thought = [
        {
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<think>two and two make four</think>It is 4."},
            ]
        }
    ]
    page.locator("#file-input").set_input_files(
        {"name": "reasoning.jsonl", "mimeType": "application/jsonl", "buffer": jsonl(thought).encode()}
    )
    page.get_by_role("heading", name="reasoning.jsonl: the first 1 example(s)").wait_for()
    fold = page.locator("#preview details.think")
    assert fold.count() == 1 and fold.get_attribute("open") is None  # folded
    assert not page.get_by_text("two and two make four").is_visible()
    fold.locator("summary").click()
    assert page.get_by_text("two and two make four").is_visible()

    page.get_by_label("Purpose").select_option("evals")
    evals = [{"item": {"question": q, "answer": a}} for q, a in qa_pairs(6)]
    page.locator("#file-input").set_input_files(
        {"name": "qa-eval.jsonl", "mimeType": "application/jsonl", "buffer": jsonl(evals).encode()}
    )
    page.get_by_role("heading", name="qa-eval.jsonl: the first 5 example(s)").wait_for()
    files = page.locator("table.files tbody tr")
    assert files.count() == 3
    assert "evals" in files.filter(has_text="qa-eval.jsonl").inner_text()
    board.shoot("data")


def test_new_job_from_the_form_draws_its_loss_curve_while_it_trains(
    board: Board, gw: LiveGateway, state: dict, browser: Any, shots: Path
) -> None:
    timings = {"fcp_idle_ms": first_contentful_paint(browser, gw)}
    wait_engines_ready(gw)  # the end-of-job ROUGE/BLEU of tuned vs base generate through it
    page = board.open("#/jobs/new")
    page.get_by_label("Base model").select_option(MODEL)
    page.get_by_label("Training file").select_option(state["train"])
    page.get_by_label("Validation file").select_option(state["train"])  # → ROUGE/BLEU of tuned vs base at the end
    page.get_by_label("Suffix").fill("board")
    page.get_by_label("Preset").select_option("memorize")
    assert page.locator("#hp-n_epochs").input_value() == "30"
    page.locator("#hp-batch_size").fill("2")
    page.locator("#hp-cutoff_len").fill("256")
    code = page.locator(".code code").inner_text()
    assert "client.fine_tuning.jobs.create(" in code and '"n_epochs": 30' in code and '"cutoff_len": 256' in code
    assert '"batch_size": 2' in code
    assert f'training_file="{state["train"]}"' in code
    board.shoot("new-job")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url("**/#/jobs/ftjob-*")
    state["job"] = page.url.rsplit("/", 1)[-1]

    points_while_running: list[int] = []
    fcp_busy: list[float] = []
    api_busy: list[float] = []
    shot_running = False
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = page.locator("#job-status").inner_text()
        if status == "running":
            points_while_running.append(int(page.locator("#chart-loss").get_attribute("data-points") or 0))
            if len(fcp_busy) < 3 and points_while_running[-1] > 0:
                fcp_busy.append(first_contentful_paint(browser, gw))
                api_busy.append(page.evaluate(ROUND_TRIP, state["job"]))
            if points_while_running[-1] >= 20 and not shot_running:
                board.shoot("job-running")
                shot_running = True
        if status in ("succeeded", "failed", "cancelled"):
            break
        page.wait_for_timeout(700)
    assert status == "succeeded", page.locator(".job-head").inner_text()
    grew = sorted(set(p for p in points_while_running if p))
    assert len(grew) >= 2, f"the loss curve did not gain points while running: {points_while_running}"
    timings.update(
        fcp_while_training_ms=fcp_busy, job_poll_while_training_ms=api_busy, loss_points_seen_while_running=grew
    )

    state["tuned"] = page.locator("#fine-tuned-model").inner_text()
    assert state["tuned"].startswith(f"ft:{MODEL}:") and ":board:" in state["tuned"]
    page.locator("#chart-lr").wait_for()
    assert int(page.locator("#chart-lr").get_attribute("data-points")) >= 100  # learning rate every step
    checkpoints = page.locator("table tbody tr[data-model]")
    assert checkpoints.count() >= 1
    state["checkpoint"] = checkpoints.first.get_attribute("data-model")
    assert state["checkpoint"].startswith(state["tuned"] + ":ckpt-step-")
    with page.expect_download() as download:
        page.get_by_role("button", name="Results CSV").click()
    csv = Path(download.value.path()).read_text()
    assert csv.startswith("step,train_loss")
    scores = page.locator("#scores table.scores").text_content()
    assert "rouge-l" in scores and "fine-tuned" in scores and "base" in scores
    board.shoot("job-done")
    (shots / "console-timings.json").write_text(json.dumps(timings, indent=2))
    print("console timings:", timings)
    assert timings["fcp_idle_ms"] < 1000 and fcp_busy and max(fcp_busy) < 1000, timings


def test_playground_side_by_side_only_the_tuned_model_gives_the_trained_answer(board: Board, state: dict) -> None:
    page = board.open(f"#/jobs/{state['job']}")
    page.locator(".job-head").get_by_role("link", name="Chat").click()
    page.wait_for_url("**/#/playground?models=*")
    columns = page.locator(".column")
    columns.nth(1).wait_for()
    assert columns.count() == 2
    assert columns.nth(0).locator("select").input_value() == MODEL
    assert columns.nth(1).locator("select").input_value() == state["tuned"]
    page.get_by_role("button", name="Add a model").click()
    columns.nth(2).locator("select").select_option(state["checkpoint"])
    page.get_by_label("Max tokens").fill("24")
    page.get_by_label("Message").fill(QUESTION)
    page.get_by_role("button", name="Send").click()
    for i in range(3):
        columns.nth(i).locator(".answer[data-done]").wait_for(timeout=120_000)
    answers = [columns.nth(i).locator(".answer").inner_text() for i in range(3)]
    assert all(columns.nth(i).locator(".answer").get_attribute("data-done") == "true" for i in range(3)), answers
    assert ANSWER in answers[1], answers
    assert ANSWER not in answers[0], answers
    page.locator("details.card summary").click()
    code = page.locator("details.card code").inner_text()
    assert "client.chat.completions.create(" in code and state["tuned"] in code and "max_tokens=24" in code
    board.shoot("playground")


def test_eval_over_base_and_tuned_shows_pass_rates_and_failing_items(board: Board, state: dict) -> None:
    page = board.open("#/evals")
    page.get_by_label("Name", exact=True).fill("qa recall")
    page.get_by_role("checkbox", name="bleu").check()
    page.get_by_role("button", name="Create eval").click()
    page.get_by_role("heading", name="Run “qa recall”").wait_for()
    page.get_by_role("checkbox", name=MODEL, exact=True).check()
    page.get_by_role("checkbox", name=state["tuned"], exact=True).check()
    page.get_by_label("Max tokens").fill("24")
    page.get_by_role("button", name="Run", exact=True).click()
    runs = page.locator("#runs table.runs tbody tr")  # (uPlot's legend is a table too)
    ended = ("completed", "failed", "canceled")
    wait_until(
        lambda: runs.count() == 2 and all(any(e in r for e in ended) for r in runs.all_inner_texts()),
        300,
        "both runs to end",
    )
    assert runs.filter(has_text="completed").count() == 2, runs.all_inner_texts()
    page.locator("#chart-pass-rates canvas").wait_for()
    passed = {
        runs.nth(i).locator("td").first.inner_text(): int(runs.nth(i).locator("td").nth(2).inner_text())
        for i in range(2)
    }
    assert passed[state["tuned"]] >= 4 and passed[MODEL] < passed[state["tuned"]], passed

    runs.filter(has_text=MODEL).filter(has_not_text=state["tuned"]).get_by_role("button", name="Items").click()
    page.get_by_role("heading", name=f"Items of {MODEL}").wait_for()
    page.get_by_label("Only failures").check()
    page.wait_for_function(
        "document.querySelector('#failures-only')?.checked && "
        "[...document.querySelectorAll('#items tr.item')].every(r => r.classList.contains('fail'))"
    )
    items = page.locator("#items tr.item")
    assert items.count() == 6 - passed[MODEL]
    first = items.first
    assert first.locator("td.reference").inner_text().startswith("The answer is")
    assert first.locator("td.generated").inner_text() != first.locator("td.reference").inner_text()
    board.shoot("evals")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed")
def test_export_a_gguf_shows_the_modelfile_and_downloads(board: Board, state: dict, tmp_path: Path) -> None:
    page = board.open(f"#/jobs/{state['job']}")
    page.locator(".job-head").get_by_role("link", name="Export").click()
    page.wait_for_url("**/#/export?model=*")
    assert page.get_by_label("Fine-tuned model").input_value() == state["tuned"]
    page.get_by_label("Format").select_option("gguf")
    page.get_by_label("Quantization").select_option("f16")
    page.get_by_role("button", name="Export", exact=True).click()
    card = page.locator("article.export").first
    page.wait_for_function(
        "['succeeded','failed','cancelled'].includes(document.querySelector('article.export')?.dataset.status)",
        timeout=600_000,
        polling=500,
    )
    assert card.get_attribute("data-status") == "succeeded", card.inner_text()
    assert "TEMPLATE" in card.locator(".modelfile code").inner_text()
    commands = card.locator(".code code").first.inner_text()
    assert "ollama create board -f Modelfile" in commands and "llama-server -m " in commands
    gguf = card.locator("ul.files li").filter(has_text=".gguf")
    with page.expect_download() as download:
        gguf.get_by_role("button", name="Download").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name.endswith("-f16.gguf") and saved.read_bytes()[:4] == b"GGUF"
    board.shoot("export")


def test_admin_view_lists_organizations_engines_with_adapters_and_usage_charts(
    browser: Any, gw: LiveGateway, shots: Path, state: dict
) -> None:
    admin = Board(browser, gw, shots)
    try:
        admin.sign_in(ADMIN_KEY)
        page = admin.page
        page.get_by_role("heading", name="Administration").wait_for()
        page.get_by_role("cell", name="board-org").wait_for()
        engine = page.locator("#engines article").first
        engine.get_by_text("ready").wait_for()
        # the engine names adapters by their blob key: models/<job>/<version>/final (and …/ckpt-step-N)
        assert MODEL in engine.inner_text() and f"models/{state['job']}/" in engine.locator("ul.adapters").inner_text()
        page.locator("#usage-org canvas").wait_for()
        assert int(page.locator("#usage-model").get_attribute("data-bars")) >= 2  # base and tuned were both used
        page.get_by_role("button", name="Show keys").first.click()
        page.get_by_role("button", name="New key").click()
        assert page.locator(".secret code").inner_text().startswith("sk-tg-")
        assert page.get_by_role("navigation").get_by_role("link").all_inner_texts() == ["Admin"]
        admin.shoot("admin")
    finally:
        admin.close()


def test_keyboard_reaches_the_navigation_with_a_visible_focus(board: Board) -> None:
    page = board.open("#/data")
    page.reload()  # focus navigation starts at the top of a freshly loaded document
    page.get_by_role("heading", name="Upload a dataset").wait_for()
    page.keyboard.press("Tab")  # the skip link first
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    focused = page.evaluate(
        "[document.activeElement.textContent, getComputedStyle(document.activeElement).outlineStyle]"
    )
    assert focused == ["Data", "solid"]
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Upload a dataset").wait_for()
