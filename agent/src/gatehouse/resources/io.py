"""Resources in files: multi-document YAML or JSON in, validated resources out.

Validation runs to completion before anything is returned, so a caller holding the
result of :func:`parse_documents` knows that every resource in the file is good and
never applies half a file.
"""

from __future__ import annotations

import json
from typing import Any

from ..durations import describe
from ..errors import BadParameter
from .schema import validate

# --------------------------------------------------------------------------- parse


def _make_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """Safe YAML that keeps timestamps as text and refuses duplicate keys."""

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(loader, node):
        loader.flatten_mapping(node)
        seen = set()
        for key_node, _unused in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value, not a list or mapping",
                    key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f'duplicate key "{key}"; give each key once', key_node.start_mark)
        return loader.construct_mapping(node, deep=True)

    Loader.add_constructor("tag:yaml.org,2002:map", construct_mapping)
    return Loader


_LOADER = None


def _load_yaml(text: str, source: str) -> list:
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _make_loader()
    try:
        loader = _LOADER(text)  # checks every character before parsing anything
    except yaml.reader.ReaderError as exc:
        raise BadParameter(f"invalid YAML in {source}: character #x{exc.character:04x} at position {exc.position} "
                           f"is not allowed in YAML; remove it or save the file as plain text") from None
    docs = []
    try:
        while loader.check_data():
            docs.append(loader.get_data())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None and mark is not None and start.line != mark.line:
            problem += f" ({context} that starts at line {start.line + 1}, column {start.column + 1})"
        raise BadParameter(f"invalid YAML in {source}{at}: {problem}") from None
    finally:
        loader.dispose()
    return docs


def parse_documents(text: Any, source: str = "<stdin>") -> list[dict]:
    """Every resource in ``text`` (multi-document YAML, a JSON object or a JSON list), validated.

    Empty documents are skipped. Nothing is returned unless every resource is valid, so
    the caller never applies half a file.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadParameter(f"{source} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if not isinstance(text, str):
        raise BadParameter(f"{source} must be YAML or JSON text, not {describe(text)}")
    stripped = text.lstrip("\ufeff \t\r\n")
    docs: list = []
    if stripped[:1] in ("{", "["):
        try:
            docs = [json.loads(stripped)]
        except ValueError as exc:
            json_error = exc
            try:
                docs = _load_yaml(stripped, source)
            except BadParameter:
                raise BadParameter(f"invalid JSON in {source} at line {json_error.lineno}, column "
                                   f"{json_error.colno}: {json_error.msg}") from None
    else:
        docs = _load_yaml(text, source)
    items = []
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, list):
            items.extend(item for item in doc if item is not None)
        else:
            items.append(doc)
    if not items:
        raise BadParameter(f"{source} contains no resources; write at least one resource with kind, "
                           f"metadata and spec")
    out, seen = [], {}
    for index, item in enumerate(items, start=1):
        where = f"resource {index} in {source}"
        res = validate(item, where=where)
        key = (res["kind"], res["metadata"]["name"])
        if key in seen:
            raise BadParameter(f'{where}: {key[0]} "{key[1]}" is already defined by resource {seen[key]}; '
                               f"keep only one of them")
        seen[key] = index
        out.append(res)
    return out
