"""Student scoring: a draft's score is the student's one-shot ICL accuracy on the probe set.

Two modes: ``loglik`` (choices ranked by log-likelihood) and ``generate`` (ARTE's greedy CoT).
"""

from __future__ import annotations

from teachlab.score.extract import answer_span, answers_match, extract_answer, truncate_output
from teachlab.score.prompt import COT, MODES, STOP, STOP_STRINGS, Demo, Probe, PromptBuilder, render
from teachlab.score.scorer import ProbeOutcome, Scorer, accuracy, mean_margin, question_score

__all__ = [
    "COT",
    "MODES",
    "STOP",
    "STOP_STRINGS",
    "Demo",
    "Probe",
    "ProbeOutcome",
    "PromptBuilder",
    "Scorer",
    "accuracy",
    "answer_span",
    "answers_match",
    "extract_answer",
    "mean_margin",
    "question_score",
    "render",
    "truncate_output",
]
