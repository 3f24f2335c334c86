"""The plugin contract's version.

A plugin's entry-point module declares the contract it was written for::

    FUNDBENCH_CONTRACT = "2.0"

The host loads it when the major versions are equal and the plugin's minor version is not
newer than the host's (a minor version only adds hooks or optional fields); any other
plugin is refused with one line naming its distribution, and the others keep working.

History: 1 (undeclared): untyped registration metadata; 2.0: typed specs
(:mod:`fundbench.api.spec`), run-time contract checks, protocol/head/metric/logger
registries and run events.
"""

from __future__ import annotations

import re

CONTRACT_VERSION = "2.0"
#: the module attribute a plugin sets
ATTRIBUTE = "FUNDBENCH_CONTRACT"

_VERSION = re.compile(r"^(\d+)\.(\d+)$")


def incompatibility(declared: object) -> str | None:
    """Why a plugin declaring ``declared`` cannot load here, or None when it can."""
    if declared is None:
        return (
            f"declares no contract version (it predates contract 2); set "
            f'{ATTRIBUTE} = "{CONTRACT_VERSION}" in its entry-point module once it follows '
            f"contract {CONTRACT_VERSION}"
        )
    match = _VERSION.match(declared) if isinstance(declared, str) else None
    if match is None:
        return f'declares {ATTRIBUTE} = {declared!r}; use "MAJOR.MINOR", e.g. "{CONTRACT_VERSION}"'
    major, minor = (int(g) for g in match.groups())
    host_major, host_minor = (int(g) for g in _VERSION.match(CONTRACT_VERSION).groups())
    if major != host_major or minor > host_minor:
        return (
            f"was written for contract {declared}, and this fundbench speaks contract "
            f"{CONTRACT_VERSION}; install a version of the plugin made for contract "
            f"{host_major}.x, or a fundbench that speaks {declared}"
        )
    return None
