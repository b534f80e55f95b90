"""Quarantine rules: the id, scope and meaning of every reason a row or a file is rejected.

Ids are stable (analysts filter on them); messages in quarantine rows add the specifics (which
column, which value, what was expected).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    rule_id: str
    scope: str  # "file" (the whole file is held back) or "row"
    description: str


RULES: dict[str, Rule] = {r.rule_id: r for r in [
    Rule("F_EMPTY", "file", "The file is empty (zero bytes)."),
    Rule("F_UNREADABLE", "file",
         "The file cannot be opened (corrupt or half-written gzip or workbook)."),
    Rule("F_CHECKSUM", "file",
         "The file's sha256 differs from the manifest (truncated or altered)."),
    Rule("F_ROW_COUNT", "file", "The number of data rows differs from the manifest."),
    Rule("F_ENCODING", "file", "The file is not in the encoding its source contract declares."),
    Rule("F_COLUMNS", "file", "Columns the contract expects are missing or renamed."),
    Rule("F_UNLISTED", "file", "The file is not listed in the institution's manifest."),
    Rule("F_OVERSIZED", "file",
         "The file is larger than its source profile allows (max_file_mib): not read at all."),
    Rule("R_FIELDS", "row", "The row has a different number of fields than the header."),
    Rule("R_QUOTING", "row", "The row has unbalanced quotes."),
    Rule("R_DECODE", "row", "The row holds bytes that are not valid in the declared encoding."),
    Rule("R_JSON", "row", "The line is not a JSON object."),
    Rule("R_REQUIRED", "row", "A required value is empty."),
    Rule("R_FORM", "row", "A value does not have the form the contract expects."),
]}


def rule(rule_id: str) -> Rule:
    return RULES[rule_id]
