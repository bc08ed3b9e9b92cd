"""ebpfw: enforce iptables-save rulesets with BPF at XDP and TC."""

__version__ = "0.1.0"
