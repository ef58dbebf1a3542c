"""The stable diagnostic codes. A code, once released, keeps its meaning.

E0xx: the text cannot be read or parsed. E1xx: names and imports. E2xx: settings, types
and units. E3xx: the shape of pipelines and layers. E4xx: prompts and context windows.
E5xx: routes and budgets. E6xx: providers and secrets.
"""

from __future__ import annotations

CODES: dict[str, str] = {
    "E001": "syntax error",
    "E002": "not a text file (binary bytes or invalid UTF-8)",
    "E003": "file too large (bytes or tokens)",
    "E004": "invalid escape in a string",
    "E005": "unterminated string",
    "E006": "file cannot be read",
    "E101": "unknown name",
    "E102": "duplicate name",
    "E103": "imported file not found",
    "E104": "import cycle",
    "E105": "name of the wrong kind",
    "E106": "imports nested too deeply",
    "E107": "import of something that is not a .moa file",
    "E201": "unknown setting",
    "E202": "wrong type of value",
    "E203": "wrong or unknown unit",
    "E204": "required setting missing",
    "E205": "setting given twice",
    "E206": "value out of range",
    "E207": "wrong number of values",
    "E301": "pipeline without an aggregator",
    "E302": "empty layer",
    "E303": "quorum larger than its layer",
    "E304": "duplicate layer in a pipeline",
    "E305": "pipeline derives from itself",
    "E306": "`without` names a layer the pipeline does not have",
    "E307": "more than one aggregator",
    "E308": "per-copy list does not match the number of copies",
    "E309": "layer after the aggregator",
    "E310": "too many agents",
    "E311": "pipeline derived through too many bases",
    "E401": "prompt template without the {responses} slot",
    "E402": "unknown slot in a prompt template",
    "E403": "prompt on a layer that receives no answers",
    "E404": "aggregator input can exceed the model's context window",
    "E501": "route names a missing pipeline",
    "E502": "route with fewer than two candidates",
    "E503": "unknown route policy",
    "E504": "more than one budget block in a file",
    "E505": "route policy setting missing, conflicting or without its policy",
    "E506": "agreement policy without candidates sharing a first layer",
    "E507": "route router file missing, invalid or for other candidates",
    "E508": "more than one planner block in a file",
    "E601": "api_key holds a literal instead of naming an environment variable",
    "E602": "invalid base URL",
    "E603": "setting that does not apply to this provider kind",
    "E604": "a setting the model's API does not take",
}
