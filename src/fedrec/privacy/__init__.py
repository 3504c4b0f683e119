"""What protects a client's upload: secure aggregation, differential privacy (central and
local), obfuscation, homomorphic encryption, and the attacks that measure leakage.

Core package: it knows nothing of the simulator, the CLI or Flower.
"""
