"""The marketplace's agent API over HTTP(S), with the standard library only."""

import json
import logging
import urllib.error
import urllib.parse
import urllib.request

logger = logging.getLogger(__name__)


class TransientError(Exception):
    """The marketplace could not be reached or asked to retry later (network error, timeout, 429, 5xx)."""


class RejectedError(Exception):
    """The marketplace rejected the data (400, 413, 422); retrying the same data will not help."""


class ConfigurationError(TransientError):
    """The key or URL is wrong (401, 403, 404): nothing is dropped, the agent retries until an operator fixes it."""


class MarketplaceClient:
    def __init__(self, base_url: str, key: str, *, timeout_seconds: float = 10.0):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"{base_url!r} is not an http(s) URL; pass the marketplace's address, such as "
                             f"https://marketplace.example.com.")
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout_seconds = timeout_seconds

    def register(self, inventory: dict, agent_version: str) -> dict:
        return self._post("/api/v1/agent/register/", {**inventory, "agent_version": agent_version})

    def heartbeat(self, snapshots: list[dict], agent_version: str) -> dict:
        return self._post("/api/v1/agent/heartbeats/", {"agent_version": agent_version, "snapshots": snapshots})

    def _post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Node {self.key}", "Content-Type": "application/json",
                     "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            detail = _detail(error)
            if error.code in (401, 403, 404):
                raise ConfigurationError(f"HTTP {error.code} from {path}: {detail} Check --url and --key.") from error
            if error.code in (400, 413, 422):
                raise RejectedError(f"HTTP {error.code} from {path}: {detail}") from error
            raise TransientError(f"HTTP {error.code} from {path}: {detail}") from error
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise TransientError(f"{path} failed: {error}") from error


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read()).get("detail", "")[:300]
    except Exception:  # a body that is not problem details still leaves the status code
        return ""
