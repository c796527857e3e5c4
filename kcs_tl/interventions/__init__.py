"""Sparse neuron interventions (De Cao et al.): tasks, the gate search, REINFORCE, and evaluation."""

from kcs_tl.interventions.counting import ForwardCount, count_forwards
from kcs_tl.interventions.effect import InterventionEffect, evaluate_intervention
from kcs_tl.interventions.find import METHODS, Intervention, InterventionConfig, find_interventions
from kcs_tl.interventions.task import (
    KINDS, InterventionTask, Prompts, agreement_task, encode_prompts, gender_task, prompt_task,
)

__all__ = [
    "KINDS", "METHODS", "ForwardCount", "Intervention", "InterventionConfig", "InterventionEffect",
    "InterventionTask", "Prompts", "agreement_task", "count_forwards", "encode_prompts",
    "evaluate_intervention", "find_interventions", "gender_task", "prompt_task",
]
