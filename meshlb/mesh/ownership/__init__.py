"""Task ownership: who runs each accepted task, who keeps copies, who takes over.

The facade is `Ownership` (`core`); events, commands and messages are in
`meshlb.mesh.ownership_msgs`, the wire codec in `meshlb.mesh.ownership_wire`.
"""

from meshlb.mesh.ownership.core import Ownership
from meshlb.mesh.ownership.roles import TRANSITIONS, Change, IllegalTransition, Role
from meshlb.mesh.ownership.shared import OwnershipCounters

# The roles by their short names, as the driver's tests compare them.
OWNER, OFFERING, PENDING, REPLICA = Role.OWNER, Role.OFFERING, Role.PENDING, Role.REPLICA

__all__ = [
    "OFFERING", "OWNER", "PENDING", "REPLICA", "TRANSITIONS", "Change", "IllegalTransition",
    "Ownership", "OwnershipCounters", "Role",
]  # fmt: skip
