"""The Azure SDK for Python, unchanged, drives a container group's whole life in Berth.

Usage: lifecycle.py <instances.json> <image> <port>
Prints one line per step; exits non-zero (with the SDK's error) on the first failure.
"""
import json
import sys
import time
import urllib.request

from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.containerinstance import ContainerInstanceManagementClient
from azure.mgmt.containerinstance.models import (
    Container, ContainerGroup, ContainerPort, EnvironmentVariable, IpAddress, Port,
    ResourceRequests, ResourceRequirements,
)


class Token:
    def __init__(self, token):
        self.token = token

    def get_token(self, *scopes, **kwargs):
        return AccessToken(self.token, int(time.time()) + 3600)


def step(name, value=""):
    print(f"ok {name} {value}", flush=True)


def main():
    cfg = json.load(open(sys.argv[1]))
    image, port = sys.argv[2], int(sys.argv[3])
    client = ContainerInstanceManagementClient(
        Token(cfg["token"]), "sub-1", base_url=cfg["server"], connection_verify=cfg["caFile"],
    )
    rg, name = "rg-sdk", "web-and-sidecar"
    res = ResourceRequirements(requests=ResourceRequests(cpu=0.5, memory_in_gb=0.5))
    web = Container(
        name="web", image=image, resources=res, ports=[ContainerPort(port=port)],
        command=["sh", "-c", f"mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p {port} -h /www"],
        environment_variables=[EnvironmentVariable(name="MODE", value="demo"),
                               EnvironmentVariable(name="TOKEN", secure_value="s3cret")],
    )
    sidecar = Container(
        name="sidecar", image=image, resources=res,
        command=["sh", "-c",
                 f"while true; do wget -q -O - http://127.0.0.1:{port}/ && echo fetched; sleep 1; done"],
    )
    group = ContainerGroup(
        location="eastus", os_type="Linux", restart_policy="Always", containers=[web, sidecar],
        ip_address=IpAddress(type="Public", ports=[Port(port=port)]), tags={"team": "berth"},
    )
    poller = client.container_groups.begin_create_or_update(rg, name, group)
    created = poller.result()
    assert created.provisioning_state == "Succeeded", created.provisioning_state
    step("create", created.provisioning_state)

    got = client.container_groups.get(rg, name)
    assert got.instance_view.state == "Running", got.instance_view.state
    states = {c.name: c.instance_view.current_state.state for c in got.containers}
    assert states == {"web": "Running", "sidecar": "Running"}, states
    secure = [e for c in got.containers for e in (c.environment_variables or []) if e.name == "TOKEN"]
    assert secure and secure[0].secure_value is None, secure
    assert got.ip_address.ip and got.ip_address.ports[0].port == port
    step("get", got.instance_view.state)

    # A Public IP address's ports answer on the host's address.
    deadline = time.time() + 10
    while True:
        try:
            body = urllib.request.urlopen(f"http://{got.ip_address.ip}:{port}/", timeout=2).read()
            break
        except OSError as e:
            assert time.time() < deadline, f"port {port} on {got.ip_address.ip} did not answer: {e}"
            time.sleep(0.2)
    assert b"hello-from-web" in body, body
    step("public-port", f"{got.ip_address.ip}:{port}")

    # A second group, so that listing (one group per page on this service) follows nextLink.
    other = ContainerGroup(location="eastus", os_type="Linux", restart_policy="Never", containers=[
        Container(name="once", image=image, resources=res, command=["sh", "-c", "echo done"])])
    client.container_groups.begin_create_or_update(rg, "other", other).result()
    names = sorted(g.name for g in client.container_groups.list())
    assert names == ["other", name], names
    names = sorted(g.name for g in client.container_groups.list_by_resource_group(rg))
    assert names == ["other", name], names
    client.container_groups.begin_delete(rg, "other").result()
    step("list", names)

    deadline = time.time() + 20
    while True:
        logs = client.containers.list_logs(rg, name, "sidecar", tail=5).content
        if "hello-from-web" in logs:
            break
        assert time.time() < deadline, f"the sidecar never fetched from web over localhost: {logs!r}"
        time.sleep(0.5)
    step("logs", "sidecar fetched from web over localhost")

    # The provider's own operations: what it offers, the images its hosts hold, and what a
    # group must reach outside (nothing, on a host without a registry).
    ops = [o.name for o in client.operations.list()]
    assert "Microsoft.ContainerInstance/containerGroups/write" in ops, ops
    cached = [c.image for c in client.location.list_cached_images("eastus")]
    assert image in cached, cached
    outbound = client.container_groups.get_outbound_network_dependencies_endpoints(rg, name)
    assert list(outbound) == [], outbound
    step("provider", f"{len(ops)} operations, {len(cached)} cached images")

    client.container_groups.begin_restart(rg, name).result()
    deadline = time.time() + 20
    while True:
        g = client.container_groups.get(rg, name)
        if g.instance_view.state == "Running" and all(
                c.instance_view.current_state and c.instance_view.current_state.state == "Running"
                for c in g.containers):
            break
        assert time.time() < deadline, "the group did not come back after restart"
        time.sleep(0.2)
    step("restart", g.instance_view.state)

    client.container_groups.stop(rg, name)
    g = client.container_groups.get(rg, name)
    assert g.instance_view.state == "Stopped", g.instance_view.state
    step("stop", g.instance_view.state)

    client.container_groups.begin_start(rg, name).result()
    g = client.container_groups.get(rg, name)
    assert g.instance_view.state == "Running", g.instance_view.state
    step("start", g.instance_view.state)

    client.container_groups.begin_delete(rg, name).result()
    try:
        client.container_groups.get(rg, name)
        raise AssertionError("the group is still there after delete")
    except ResourceNotFoundError:
        pass
    step("delete", "gone")

    # Bad input comes back as an ARM error naming the field, and leaves nothing behind.
    bad = ContainerGroup(location="eastus", os_type="Linux", containers=[Container(
        name="web", image=image,
        resources=ResourceRequirements(requests=ResourceRequests(cpu=100, memory_in_gb=1)))])
    try:
        client.container_groups.begin_create_or_update(rg, "bad-cpu", bad).result()
        raise AssertionError("cpu 100 was accepted")
    except HttpResponseError as e:
        assert e.error.code == "InvalidContainerResourceRequests", e.error.code
        assert e.error.target.endswith("resources.requests.cpu"), e.error.target
    try:
        client.container_groups.get(rg, "bad-cpu")
        raise AssertionError("a refused group was stored")
    except ResourceNotFoundError:
        pass
    step("bad-input", "InvalidContainerResourceRequests")


if __name__ == "__main__":
    main()
