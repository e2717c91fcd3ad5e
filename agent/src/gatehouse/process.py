"""One `gatehouse start` process: run the services its config enables, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal

from . import sshtuning
from .audit import AuditLog, AuditShipper
from .reload import Reloader, is_successor
from .config import Config, split_hostport
from .member.join import api_client, obtain_identity

log = logging.getLogger("gatehouse")


class GatehouseProcess:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.auth = None
        self.closers: list = []
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        cfg = self.cfg
        audit = None
        if cfg.auth.enabled:
            from .auth import api as auth_api
            from .auth.service import AuthService
            self.auth = await AuthService.open(cfg)
            audit = self.auth.audit
            runner = await auth_api.start(self.auth)
            self.closers += [runner.cleanup, self.auth.close]
        if not (cfg.proxy.enabled or cfg.ssh.enabled):
            return
        from .member.cache import ClusterCache
        from .member.checkers import CheckerCache
        from .member.context import MemberContext
        audit = audit or AuditLog.for_config(cfg)
        roles = [r for r, on in (("proxy", cfg.proxy.enabled), ("node", cfg.ssh.enabled)) if on]
        issue = self.auth.issue_host_identity if self.auth is not None else None
        idents = {}
        for role in roles:
            idents[role] = await obtain_identity(cfg, role, cfg.nodename, self._principals(role), issue,
                                                 keep_keys=is_successor())
        client = api_client(idents[roles[0]])
        cache = ClusterCache(client)
        await cache.start()
        if not audit.cluster_name:   # a node or proxy without auth learns its cluster from the cache
            audit.cluster_name = cache.cluster_name
        self.closers += [client.close, cache.stop]
        if self.auth is None:
            # Without auth here, this process's events go to auth's chain (audit.py: at least once, from the file).
            shipper = AuditShipper(audit, lambda batch: client.call("POST", "/v1/audit/events", {"events": batch}))
            shipper.start()
            self.closers.append(shipper.stop)
        ctx = MemberContext(cfg=cfg, ident=idents[roles[0]], client=client, cache=cache,
                            checkers=CheckerCache(cache), audit=audit)
        if cfg.proxy.enabled:
            from .proxy.ssh import ProxySSH
            from .proxy.web import ProxyWeb
            from .tunnel.agent import TunnelAgentPool
            from .tunnel.server import TunnelServer
            tunnels = TunnelServer(ctx)
            web = ProxyWeb(ctx, tunnels)
            ssh = ProxySSH(ctx, tunnels)
            agents = TunnelAgentPool(ctx)
            await web.start()
            await ssh.start()
            await tunnels.start()
            await agents.start()
            self.closers += [web.stop, ssh.stop, tunnels.stop, agents.stop]
        clients = {roles[0]: client}
        if cfg.ssh.enabled:
            from .node.server import NodeService
            node_client = clients["node"] = api_client(idents["node"])
            node = NodeService(ctx.for_identity(idents["node"], node_client))
            await node.start()
            self.closers += [node.stop, node_client.close]
        self._renew_identities(idents, clients)

    def _renew_identities(self, idents: dict, clients: dict) -> None:
        """Each identity renews itself at half-life through the client that calls auth as it."""
        from .member.renew import identity_renewer
        for role, ident in idents.items():
            renewer = identity_renewer(ident, clients[role], role)
            renewer.start()
            self.closers.append(renewer.stop)  # closers run in reverse: renewals stop before anything else

    def _principals(self, role: str) -> list[str]:
        cfg = self.cfg
        addrs = [cfg.ssh.public_addr, cfg.ssh.listen_addr] if role == "node" else \
            [cfg.proxy.ssh_public_addr, cfg.proxy.public_addr, cfg.proxy.listen_addr, cfg.proxy.tunnel_public_addr]
        hosts = {split_hostport(a, 1)[0] for a in addrs if a}
        return sorted(h for h in hosts | {"localhost", "127.0.0.1"} if h not in ("0.0.0.0", "::"))

    async def stop(self) -> None:
        for close in reversed(self.closers):
            try:
                await close()
            except Exception:  # noqa: BLE001 - keep closing the rest
                log.exception("error while stopping")
        self.closers.clear()


async def migrate_storage(cfg: Config, conn_string: str) -> dict:
    """`gatehouse migrate`: copy this auth server's site from SQLite into PostgreSQL (auth/storage_move.py)."""
    from .auth.storage_move import copy_to_postgresql
    return await copy_to_postgresql(cfg, conn_string)


async def run(cfg: Config) -> None:
    from .fdlimit import log_accept_refusals_once, raise_open_files
    raise_open_files()  # a socket per tunnel and connection (docs/operations.md, "File descriptors")
    log_accept_refusals_once(asyncio.get_running_loop())
    sshtuning.install()
    # Buffers of the bulk-data path (reads up to 256 KiB, packets of 132 KiB) come from a
    # heap that keeps up to 32 MiB freed rather than returning it to the kernel per packet.
    sshtuning.keep_heap(mmap_threshold=1024 * 1024, trim_threshold=32 * 1024 * 1024)
    proc = GatehouseProcess(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, proc.stopped.set)
    reloader = Reloader(proc)  # SIGHUP: a new process takes the listeners over, this one drains
    try:
        await proc.start()
        await reloader.started()
        log.info("gatehouse is running (pid services: %s)", ", ".join(
            s for s, on in (("auth", cfg.auth.enabled), ("proxy", cfg.proxy.enabled), ("node", cfg.ssh.enabled)) if on))
        await proc.stopped.wait()
        log.info("shutting down")
    finally:
        await proc.stop()
