"""The attack simulator: benign users and model thieves that query a served
model through the guard, on simulated time. Framework-free (numpy and
scikit-learn); it talks WSGI or HTTP."""

from .actor import Actor, Answer, Request, World
from .clock import SimulatedClock, SimulatedStorage
from .runner import HTTPTransport, Simulation, WSGITransport, read_answer

__all__ = [
    "Actor",
    "Answer",
    "HTTPTransport",
    "Request",
    "SimulatedClock",
    "SimulatedStorage",
    "Simulation",
    "WSGITransport",
    "World",
    "read_answer",
]
