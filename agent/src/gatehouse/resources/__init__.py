"""Resource kinds: ``schema`` (what each kind holds, validation and normalisation),
``io`` (YAML/JSON files in), ``render`` (YAML, JSON and tables out) and ``compare``
(whether a change changes anything).

Import what you need from here; each name lives in exactly one of those modules.
"""

from .compare import same
from .io import parse_documents
from .render import redact, render
from .schema import (DEFAULT_MAX_SESSION_TTL, DEFAULT_VERSIONS, KIND_ALIASES, KINDS, MIN_TOKEN_LENGTH,
                     READ_ONLY_KINDS, SECRET_FIELDS, VERSIONS, canonical_kind, is_name_suffix, is_trait_name,
                     parse_labels_arg, parse_ref, tunnel_addr_is_discovered, tunnel_dial_addr, validate,
                     validate_dial_addr, validate_labels, validate_leaf_name, validate_name, validate_password)

__all__ = [
    "KINDS", "READ_ONLY_KINDS", "KIND_ALIASES", "VERSIONS", "DEFAULT_VERSIONS", "DEFAULT_MAX_SESSION_TTL",
    "MIN_TOKEN_LENGTH", "SECRET_FIELDS", "canonical_kind", "parse_ref", "validate_name", "parse_documents",
    "validate", "render", "redact", "same", "parse_labels_arg", "validate_labels", "tunnel_addr_is_discovered",
    "tunnel_dial_addr", "validate_password", "is_trait_name", "validate_leaf_name", "is_name_suffix",
    "validate_dial_addr",
]
