"""The kubernetes backend: an Axon's actions as Jobs, Deployments and Services in its namespace.

`run()` has the local backend's shape, so the runner drives either through
`executors.backends.base.Backend`: it creates the objects (`executors.backends.k8s_objects`
renders them), awaits `on_running` once the run's Job or Deployment exists, and returns a
`RunOutcome` when the Job finished or every model server is available. It polls the run's own
object for that; publishing lifecycle events for everyone else is the lifecycle watcher's job
(`events.watchers.lifecycle`), which gives its events the same ids as the runner's would have
(`lifecycle_event_id`), so the bus keeps one of each.

Objects belong to the Axon: to the Axon custom object when it exists in the namespace, else to a
per-Axon ConfigMap anchor created on first use; deleting that owner deletes them all.

Images: a task with `image` runs it. A task with `imageBuild` runs
`<registry>/<repositoryName>:<content hash>`; unless `check_image_exists` finds that tag in the
registry already, a kaniko Job (one per tag, shared by concurrent runs) builds and pushes it
first. s2i builds are not supported: such a task runs only when its image already exists.

Cancelling a run deletes its Job (and the pods, in the background). Cancelling the coroutine
that awaits `run()` does not: the Job keeps running and the watcher reports how it ends.
The client is the synchronous `kubernetes` client, called in worker threads.

The package: `backend` (running, adopting and cancelling runs), `api` (the client calls),
`deletion` (what goes when an Axon is deleted or a server is no longer routed), `logs` (a run's
pod logs).
"""

from __future__ import annotations

from executors.backends.kubernetes.api import ClusterError, api_client_for
from executors.backends.kubernetes.backend import AllocateVersion, KubernetesBackend, KubeStarted
from executors.backends.kubernetes.logs import run_log_chunks, run_object

__all__ = [
    "AllocateVersion",
    "ClusterError",
    "KubeStarted",
    "KubernetesBackend",
    "api_client_for",
    "run_log_chunks",
    "run_object",
]
