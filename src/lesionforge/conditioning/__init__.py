"""Conditioning stage: where masks of new samples come from, edge maps, text prompts and the text encoder.

- :mod:`~lesionforge.conditioning.masks`: jittered real masks, size-controlled lesions, field of view,
  placement inside it, cleaning of generated masks; the :class:`MaskSource` protocol.
- :mod:`~lesionforge.conditioning.edges`: EMIT-Diff edge maps (image edges + mask boundary).
- :mod:`~lesionforge.conditioning.prompts`: clinical prompt libraries and user prompt files.
- :mod:`~lesionforge.conditioning.text`: the frozen offline MiniLM text encoder.
"""

from lesionforge.conditioning.edges import edge_map, edge_maps
from lesionforge.conditioning.masks import (
    MaskSource,
    RealJitterSource,
    SizeControlledSource,
    SizeSampler,
    area_fractions,
    build_mask_source,
    clean_generated_mask,
    field_of_view,
    jitter_mask,
    place_mask,
    shape_bank_from_masks,
    size_controlled_mask,
)
from lesionforge.conditioning.prompts import (
    PromptLibrary,
    available_domains,
    domain_for_dataset,
    expand_templates,
    load_prompt_library,
)
from lesionforge.conditioning.text import NULL_PROMPT, TEXT_DIM, TextEncoder

__all__ = [
    "NULL_PROMPT",
    "TEXT_DIM",
    "MaskSource",
    "PromptLibrary",
    "RealJitterSource",
    "SizeControlledSource",
    "SizeSampler",
    "TextEncoder",
    "area_fractions",
    "build_mask_source",
    "available_domains",
    "clean_generated_mask",
    "domain_for_dataset",
    "edge_map",
    "edge_maps",
    "expand_templates",
    "field_of_view",
    "jitter_mask",
    "load_prompt_library",
    "place_mask",
    "shape_bank_from_masks",
    "size_controlled_mask",
]
