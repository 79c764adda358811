"""Model card templates (installed as `vlm_hf.model_cards`)."""
