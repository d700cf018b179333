"""gptresume: train and fine-tune GPT-2 with Hugging Face Transformers, stop at any instant, resume exactly."""

__version__ = "0.1.0"
