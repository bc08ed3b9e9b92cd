"""compile: the ruleset IR to a Plan of classification tables (pure Python, no syscalls)."""

from .plan import Plan, compile_plan

__all__ = ["Plan", "compile_plan"]
