"""torchslim: distill, prune and quantize a trained PyTorch model, and measure what you ship."""
__version__ = "0.1.0"
