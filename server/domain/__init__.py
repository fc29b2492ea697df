"""The domain: what ProjectVM's state is made of, shared by every layer above the store.

Models (projects, agents, executions, events), the operations a caller can ask for and what
each needs, typed event payloads, the error tree and the configuration. Nothing here does I/O.
"""
