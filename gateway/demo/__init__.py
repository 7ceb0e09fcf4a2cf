"""The embedded demo and the testbed's real parts: process starters, the demo task, the teacher stand-in."""
