"""How a person names the question they answer.

A question's id is the one its template gave it (`ask_human(..., question_id=...)`, so an
email sent before the question is asked can print it), else LangGraph's interrupt id. An
answer that names its question is refused once another question is pending: whoever read
the first email answers the first question, never a later one. Kept free of heavy imports:
the templates and the CLI's output both use it.
"""

from __future__ import annotations


def answer_command(thread_id: str, question_id: str, decisions: str) -> str:
    """The whole `durakit approve` command that answers this question and no later one;
    `decisions` as shown to the reader (e.g. "approve|reject")."""
    return f"durakit approve {thread_id} --question {question_id} --decision {decisions}"
