"""What the service's experiments (compare, attribute sweep, interpolate) and the model code share, without torch.

* :data:`CONDITION_FREE_DECODERS`: backends whose ``decode`` reads the code only, never the condition. Their
  codes of different conditions decode in one pass, and an interpolation may go from one condition to another
  (the path runs between two codes); a backend whose decoder takes the condition (pga, vae) interpolates
  between seeds of one condition only.
* :data:`REGENERATING_BACKENDS`: backends that can re-generate an encoded image under another condition.
* :data:`SWEEP_WORDS`: the attribute words of the built-in captioned data sets (the values
  ``training/attributes.py`` labels images with), so that a sweep of a prompt's colour, tone or cut word
  offers the words the text models were trained on.
"""

from __future__ import annotations

CONDITION_FREE_DECODERS = frozenset({"aae-cg", "glf", "lde"})

# backends that can re-generate an encoded image under another condition with its code kept (glf through its
# invertible conditional flow, pga and vae by decoding the code with the other condition); the code-generator
# AAE's generator and the LDE's sampler cannot be inverted
REGENERATING_BACKENDS = frozenset({"glf", "pga", "vae"})

SWEEP_WORDS: dict[str, tuple[str, ...]] = {
    "colour": ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "white", "grey", "black"),
    "tone": ("dark", "light"),
    "cut": ("narrow", "wide"),
}


def attribute_of(word: str) -> str | None:
    """The attribute (``colour``, ``tone``, ``cut``) a word is a value of, or None."""
    lowered = word.strip().lower()
    for attribute, words in SWEEP_WORDS.items():
        if lowered in words:
            return attribute
    return None
