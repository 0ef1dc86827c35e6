"""Shared pieces of the cluster tests."""


def yaml_strings(node) -> list[str]:
    """Every string in a parsed YAML document (commands, env values, mounts), depth first."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in yaml_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in yaml_strings(v)]
    return []
