"""Nothing reaches the network while a model is read and built.

Library builders download by default in places (a torchvision segmentation model's ImageNet
backbone, a timm ``pretrained=True``), and a user's factory may do anything. Inside
:func:`no_network`, opening an internet socket or resolving a host name raises, torch.hub's
downloaders refuse before they create their cache folder, and the whole attempt is reported
as one line naming who tried and what ("--arch torchvision:lraspp_mobilenet_v3_large tried to
download https://..."), even when the library caught the error and went on or failed otherwise.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.request

from ...errors import ModelFormatError

_LOCK = threading.RLock()
_INTERNET = (socket.AF_INET, socket.AF_INET6)


class NetworkRefused(ConnectionRefusedError):
    """An attempt to reach the network inside :func:`no_network`."""


@contextlib.contextmanager
def no_network(who: str, path: object = None):
    """Refuse every network attempt inside; report the first one as ModelFormatError about ``who``."""
    attempts: list[str] = []

    def refuse(what: str):
        attempts.append(what)
        raise NetworkRefused(f"lsuv-convert refused a network connection ({what})")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_sendmsg = socket.socket.sendto, socket.socket.sendmsg
    real_open = urllib.request.OpenerDirector.open

    def connect(sock, address):
        if sock.family in _INTERNET:
            refuse(f"to reach {_address(address)}")
        return real_connect(sock, address)

    def connect_ex(sock, address):
        if sock.family in _INTERNET:
            refuse(f"to reach {_address(address)}")
        return real_connect_ex(sock, address)

    def sendto(sock, data, *args):
        if sock.family in _INTERNET:
            refuse(f"to send to {_address(args[-1])}")
        return real_sendto(sock, data, *args)

    def sendmsg(sock, buffers, *args):
        if sock.family in _INTERNET and len(args) >= 3:
            refuse(f"to send to {_address(args[2])}")
        return real_sendmsg(sock, buffers, *args)

    def opener_open(opener, url, *args, **kwargs):
        full = getattr(url, "full_url", url)
        if isinstance(full, str) and not full.startswith(("file:", "data:")):
            refuse(f"to download {full}")
        return real_open(opener, url, *args, **kwargs)

    def download(url, *args, **kwargs):
        refuse(f"to download {url}")

    patches = [
        (socket.socket, "connect", connect),
        (socket.socket, "connect_ex", connect_ex),
        (socket.socket, "sendto", sendto),
        (socket.socket, "sendmsg", sendmsg),
        (socket, "create_connection", lambda address, *a, **k: refuse(f"to reach {_address(address)}")),
        (socket, "getaddrinfo", lambda host, *a, **k: refuse(f"to resolve {host}")),
        (socket, "gethostbyname", lambda host: refuse(f"to resolve {host}")),
        (socket, "gethostbyname_ex", lambda host: refuse(f"to resolve {host}")),
        (urllib.request.OpenerDirector, "open", opener_open),
    ]
    patches += [(module, name, download) for module, name in _downloaders()]
    with _LOCK:
        saved = [(owner, name, name in vars(owner), vars(owner).get(name)) for owner, name, _ in patches]
        for owner, name, value in patches:
            setattr(owner, name, value)
        try:
            yield
        except Exception as exc:
            if attempts:
                raise ModelFormatError(_message(who, attempts), path=path) from exc
            raise
        finally:
            for owner, name, had, value in saved:
                if had:
                    setattr(owner, name, value)
                else:  # inherited (socket.socket's methods come from _socket.socket)
                    delattr(owner, name)
        if attempts:  # the library caught the refusal and carried on
            raise ModelFormatError(_message(who, attempts), path=path)


def _message(who: str, attempts: list[str]) -> str:
    return (f"{who} tried {attempts[0]}; lsuv-convert never reaches the network (build the model without "
            "pretrained weights, or load the weights from a local file)")


def _address(address) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _downloaders() -> list[tuple[object, str]]:
    """(module, name) of every loaded module's reference to torch.hub's downloaders (libraries
    import them by name: patching torch.hub alone would miss theirs), so that they refuse before
    they create their cache folder."""
    import sys

    hub = sys.modules.get("torch.hub")
    if hub is None:
        return []
    found = []
    real = {getattr(hub, "load_state_dict_from_url", None), getattr(hub, "download_url_to_file", None)} - {None}
    for module in list(sys.modules.values()):
        space = getattr(module, "__dict__", None) or {}
        for name in ("load_state_dict_from_url", "download_url_to_file", "load_url"):
            if any(space.get(name) is fn for fn in real):
                found.append((module, name))
    return found
