"""The simulated adversary: attacks and fault injection, composed from outside the apps."""
