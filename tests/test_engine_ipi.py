"""i-PI protocol: ``EquimolCalculator`` served by ASE's ``SocketClient`` over a local UNIX
socket gives a driver (ASE's ``SocketIOCalculator``, standing in for i-PI) the calculator's own
energies, forces and stress, step after step."""

from __future__ import annotations

import threading
import uuid

import numpy as np
import torch
from ase.build import bulk
from ase.calculators.socketio import SocketClient, SocketIOCalculator

from equimol.engines import Eager, EquimolCalculator
from equimol.models.equivariant import EquivariantPotential


class _ClientThread(threading.Thread):
    """The client as a thread that the server can watch like a process (``poll``, ``wait``),
    so that a client that fails before connecting is an error, not a server waiting forever."""

    def __init__(self, target) -> None:
        super().__init__(target=target, daemon=True)
        self.errors: list[BaseException] = []

    def poll(self) -> int | None:
        return None if self.is_alive() else int(bool(self.errors))

    def wait(self) -> int:
        self.join(timeout=30.0)
        return self.poll() or 0


def test_the_socket_client_serves_the_calculators_results():
    torch.manual_seed(0)
    backend = Eager(EquivariantPotential(["Cu"], cutoff=4.0, channels=4, num_layers=2).double())
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=0)
    name = f"equimol-test-{uuid.uuid4().hex[:12]}"

    def client() -> None:
        try:
            served = atoms.copy()
            served.calc = EquimolCalculator(backend)
            SocketClient(unixsocket=name, timeout=60.0).run(served, use_stress=True)
        except BaseException as error:  # reported by the test below
            thread.errors.append(error)

    driver = atoms.copy()
    reference = atoms.copy()
    reference.calc = EquimolCalculator(backend)
    with SocketIOCalculator(unixsocket=name, timeout=60.0) as calc:
        thread = _ClientThread(client)
        calc.server.proc = thread  # the server then checks that the client is alive while it waits
        thread.start()
        driver.calc = calc
        rng = np.random.default_rng(0)
        for step in range(3):
            if step:
                moved = driver.positions + rng.normal(0.0, 0.02, driver.positions.shape)
                driver.positions = moved
                reference.positions = moved
            np.testing.assert_allclose(driver.get_potential_energy(), reference.get_potential_energy(), rtol=1e-12)
            np.testing.assert_allclose(driver.get_forces(), reference.get_forces(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(driver.get_stress(), reference.get_stress(), rtol=1e-8, atol=1e-12)
    thread.join(timeout=30.0)
    assert not thread.is_alive(), "the socket client did not stop when the driver closed the connection"
    assert not thread.errors, thread.errors
