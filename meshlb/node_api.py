"""The API's ports, cut from the node's parts: each route module gets only what it uses.

This is the one place that knows both the whole node (`meshlb.node_build.Node`) and
what each route module needs (`meshlb.api.app.ApiParts`); the routes themselves
never see the node.
"""

from __future__ import annotations

from collections.abc import Mapping

from meshlb.api.app import ApiParts
from meshlb.api.dashboard import DashboardPorts
from meshlb.api.idempotency import KeyArbiter
from meshlb.api.internal_routes import InternalPorts
from meshlb.api.mesh_docs import DocsPorts
from meshlb.api.metrics import MetricsPorts
from meshlb.api.model_relay import RelayToOllama
from meshlb.api.model_routes import ModelPorts
from meshlb.api.node_routes import NodePorts
from meshlb.api.ollama_routes import CatalogPorts, InferencePorts, MeshPlacement
from meshlb.api.peer_auth import PeerAuth
from meshlb.api.ports import PeerLink, RequestRules
from meshlb.api.relay import RelayPorts
from meshlb.api.task_routes import TaskPorts
from meshlb.api.work_errors import ModelCheck
from meshlb.mesh.auth import ReplayGuard
from meshlb.node_build import Node


def api_parts(node: Node) -> ApiParts:
    """Every route module's ports over one node."""
    s, n = node.settings, node.node_id
    link = PeerLink(node.peer_client, s.cluster_key)
    # Signatures of node-to-node requests seen lately: each is accepted once.
    auth = PeerAuth(s.cluster_key, ReplayGuard(), node.counters)
    models = ModelCheck(node.catalog, node.mesh, node.backend.base_url)

    def gossip_drops() -> Mapping[str, int]:
        return node.gossip.dropped

    relay = RelayPorts(
        node_id=n,
        scheduler=node.scheduler,
        backend=node.backend,
        generation_rate=node.generation_rate,
        counters=node.counters,
        requests=node.requests,
    )
    placing = MeshPlacement(
        node_id=n,
        catalog=node.catalog,
        placement=node.placement,
        mesh=node.mesh,
        models=models,
        cluster_key=s.cluster_key,
        counters=node.counters,
        log=node.log,
        calls=node.peer_calls,
    )
    metrics = MetricsPorts(
        node_id=n,
        requests=node.requests,
        log=node.log,
        gossip_drops=gossip_drops,
        mesh=node.mesh,
        scheduler=node.scheduler,
        ollama_up=lambda: node.catalog.reachable,
        tasks=node.facts,
        counters=node.counters,
    )
    dashboard = DashboardPorts(
        node_id=n,
        catalog=node.catalog,
        backend=node.backend,
        scheduler=node.scheduler,
        generation_rate=node.generation_rate,
        drain=node.drain,
        series=node.series,
        log=node.log,
        mesh=node.mesh,
        link=link,
    )
    return ApiParts(
        node_id=n,
        requests=node.requests,
        mesh=node.mesh,
        inference=InferencePorts(
            node_id=n,
            rules=RequestRules(s.max_body_bytes, s.request_timeout_s, s.default_num_predict),
            drain=node.drain,
            auth=auth,
            scheduler=node.scheduler,
            counters=node.counters,
            requests=node.requests,
            relay=relay,
            mesh=placing,
        ),
        catalog=CatalogPorts(n, node.catalog, node.backend, node.mesh, node.started_at_wall),
        docs=DocsPorts(
            node_id=n,
            max_body_bytes=s.max_body_bytes,
            backend=node.backend,
            catalog=node.catalog,
            mesh=node.mesh,
            link=link,
            auth=auth,
            models=models,
            counters=node.counters,
        ),
        models=ModelPorts(s.max_body_bytes, node.catalog, node.mesh, link),
        tasks=TaskPorts(
            node_id=n,
            max_body_bytes=s.max_body_bytes,
            default_num_predict=s.default_num_predict,
            drain=node.drain,
            auth=auth,
            catalog=node.catalog,
            placement=node.placement,
            ownership=node.facts,
            service=node.tasks,
            keys=KeyArbiter(n, node.mesh, link, node.counters, node.tasks.find_by_key),
            mesh=node.mesh,
            link=link,
            models=models,
            counters=node.counters,
        ),
        node=NodePorts(
            node_id=n,
            not_ready_reasons=node.readiness.not_ready_reasons,
            scheduler=node.scheduler,
            counters=node.counters,
            tasks=node.facts,
            mailer_counters=node.mailer_counters,
            gossip_drops=gossip_drops,
            metrics=metrics,
            dashboard=dashboard,
        ),
        internal=InternalPorts(
            node_id=n,
            auth=auth,
            counters=node.counters,
            receive=node.tasks.mesh.receive,
            models=RelayToOllama(
                node_id=n,
                ollama_url=node.backend.base_url,
                max_body_bytes=s.max_body_bytes,
                auth=auth,
                catalog=node.catalog,
                announce_now=node.announce_now,
            ),
        ),
    )
