"""The five primitives' semantics, written against small backend protocols.

Nothing in this package imports aio-pika or :mod:`bus`; the :class:`bus.Bus` facade wires a
backend and the settings each manager needs into it.
"""
