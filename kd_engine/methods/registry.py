"""The method registry lives apart from the package init so method modules can import it."""
from kd_engine.registry import Registry

METHODS = Registry("method")

# Methods of generation (editing) runs; a method that only makes sense there is also listed in
# METHODS so name checks and listings see it.
GENERATION_METHODS = Registry("generation method")

# Methods of image-harmonization runs (composite image -> harmonized image).
HARMONIZATION_METHODS = Registry("harmonization method")
