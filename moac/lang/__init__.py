"""The language stage: ``.moa`` text to a typed AST and back.

Takes source text (a file and the files it imports); gives the frozen, span-carrying AST
(:mod:`.ast`), syntax errors with carets (:mod:`.diagnostics`, :mod:`.syntax_errors`), the
loaded workspace of imports (:mod:`.loader`) and the canonical text (:mod:`.fmt`). The only
stage that imports lark; it imports nothing of moac but :mod:`moac.constants` and
:mod:`moac.text`.
"""
