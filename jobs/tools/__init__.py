"""Helpers that make klrank's inputs from other tools' outputs (``python -m klrank.tools.NAME``).

They are not imported by ``klrank`` itself; each names the optional packages it needs (a
language model's logits need torch and transformers, which klrank does not depend on).
"""
