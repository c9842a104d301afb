"""The model registry, in its own module so that the model files can register into it without importing the
package that imports them."""
from torchslim.registry import Registry

MODELS: Registry = Registry("model")
