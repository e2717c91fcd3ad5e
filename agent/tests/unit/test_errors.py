"""Every error is one line, whatever input it quotes (found by the fuzz pass)."""

from __future__ import annotations

from conftest import raised_message
from gatehouse import config, resources
from gatehouse.errors import BadParameter, from_dict, one_line


def test_control_characters_in_quoted_input_are_escaped():
    assert one_line('unknown key "a\nb\tc\x1b[31m"') == 'unknown key "a\\nb\\tc\\x1b[31m"'
    assert str(BadParameter("bad name \"x\ny\"")) == 'bad name "x\\ny"'
    assert from_dict({"error": {"code": "bad_parameter", "message": "a\r\nb"}}).message == "a\\r\\nb"


def test_config_and_resource_errors_quote_input_on_one_line():
    assert raised_message(config.parse, {"\nforged": None}, "f.yaml") == (
        'f.yaml: unknown key "\\nforged"; allowed keys are audit, auth_service, gatehouse, proxy_service, ssh_service, '
        'version')
    assert "\\n" in raised_message(resources.validate, {"kind": "role", "metadata": "\n"})


def test_a_control_character_in_a_resource_file_is_one_sentence():
    assert raised_message(resources.parse_documents, "kind: role\x1f", "r.yaml") == (
        "invalid YAML in r.yaml: character #x001f at position 10 is not allowed in YAML; remove it or save the "
        "file as plain text")
