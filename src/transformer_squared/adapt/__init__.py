"""Pass 1 of Transformer² (paper §3.2): strategies that map a batch of prompts to mixture weights
over the given experts. One module per strategy behind one `Strategy` protocol.
"""
