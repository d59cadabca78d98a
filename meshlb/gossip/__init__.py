"""Gossip membership: SWIM + Lifeguard as a pure core (`Membership`), a Trio driver
(`meshlb.gossip.driver.GossipDriver`, imported separately so the core never pulls in
Trio), a msgpack wire format and an AES-GCM keyring."""

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.membership import Membership
from meshlb.gossip.table import MemberView

__all__ = ["GossipConfig", "MemberView", "Membership"]
