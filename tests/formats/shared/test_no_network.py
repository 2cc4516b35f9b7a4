"""Inside no_network every way out is refused and reported in one line naming who tried and what,
even when the caller swallows the error; local (Unix) sockets still work; everything is restored."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import torch

from lsuv_convert.errors import ModelFormatError
from lsuv_convert.formats.shared.no_network import no_network


def _tcp():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.connect(("192.0.2.1", 80))


def _udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", ("192.0.2.1", 53))


def _resolve():
    socket.getaddrinfo("example.com", 443)


def _url():
    urllib.request.urlopen("https://example.com/model.bin", timeout=1)


def _hub():
    torch.hub.load_state_dict_from_url("https://download.pytorch.org/models/resnet18-f37072fd.pth")


@pytest.mark.parametrize("attempt, what", [(_tcp, "reach 192.0.2.1:80"), (_udp, "send to 192.0.2.1:53"),
                                           (_resolve, "resolve example.com"),
                                           (_url, "download https://example.com/model.bin"),
                                           (_hub, "download https://download.pytorch.org/models/resnet18")])
def test_every_way_out_is_refused_and_named(attempt, what, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    originals = (socket.socket.connect, socket.getaddrinfo, urllib.request.OpenerDirector.open,
                 torch.hub.load_state_dict_from_url)
    with pytest.raises(ModelFormatError, match=f"the builder tried to {what}"):
        with no_network("the builder"):
            attempt()
    assert not (tmp_path / "hub").exists()
    assert (socket.socket.connect, socket.getaddrinfo, urllib.request.OpenerDirector.open,
            torch.hub.load_state_dict_from_url) == originals


def test_a_swallowed_refusal_is_still_reported():
    with pytest.raises(ModelFormatError, match="tried to resolve example.com"):
        with no_network("a factory"):
            try:
                _resolve()
            except OSError:
                pass


def test_local_sockets_still_work():
    with no_network("x"):
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"ok")
            assert b.recv(2) == b"ok"
