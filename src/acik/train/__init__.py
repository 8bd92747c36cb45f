"""Training: pretraining and fine-tuning (SFT, LoRA, QLoRA)."""
