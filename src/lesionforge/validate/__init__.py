"""validate stage: the single-step validators (latent and pixel segmenters) and the filter they drive.

Importing the package registers both validator kinds with
:func:`~lesionforge.validate.validator.load_validator` (see :func:`~lesionforge.validate.validator.register_kind`).
"""

from lesionforge.validate import latent_segmenter, pixel_segmenter  # noqa: F401  (registers the kinds)
