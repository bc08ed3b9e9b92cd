"""rulesets/docker-stateful.rules: docker-like.rules with Docker's real conntrack rule; the
same script as docker-like, whose replies now count as ESTABLISHED or RELATED."""

from . import docker_like
from .common import Case, ruleset


def build() -> Case:
    base = docker_like.build()
    return Case(name="docker-stateful", ruleset=ruleset("docker-stateful.rules"),
                source="rulesets/docker-stateful.rules", steps=base.steps, listen=base.listen,
                stateful=True)
