"""Fine-tuning: data formats → tokenized examples, the LoRA recipe, eval metrics, export.

Heavy libraries (torch, transformers, peft) are imported lazily inside the modules that train, so the
gateway can import ``finetune.formats`` without them.
"""
