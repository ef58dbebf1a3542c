"""Checking aggregate-and-synthesize prompt templates (see :mod:`moac.ir.prompts`).

The only slot is ``{responses}``, where the earlier layer's answers go, numbered. A template
without it would ask a model to synthesize answers it never sees.
"""

from __future__ import annotations

from moac.lang import ast
from moac.checks.values import Reader
from moac.constants import RESPONSES_SLOT
from moac.ir.prompts import template_slots


def check_template(reader: Reader, value: ast.Value, text: str) -> bool:
    slots, stray = template_slots(text)
    ok = True
    for slot in slots:
        if slot != RESPONSES_SLOT:
            reader.report("E402", f"unknown slot '{{{slot}}}' in the prompt", value.span,
                          hint=f"the one slot is {{{RESPONSES_SLOT}}}; write {{{{ and }}}} "
                               "for literal braces")
            ok = False
    if stray:
        reader.report("E402", f"a lone '{stray[0]}' in the prompt", value.span,
                      hint="write {{ and }} for literal braces")
        ok = False
    if RESPONSES_SLOT not in slots:
        reader.report("E401", f"the prompt has no {{{RESPONSES_SLOT}}} slot for the earlier "
                      "answers", value.span,
                      hint=f"add {{{RESPONSES_SLOT}}} where the numbered answers should go")
        ok = False
    return ok
