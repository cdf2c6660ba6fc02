"""The speed and memory harness behind ``scvae bench`` (apart from the library proper):
synthetic CSR screens written block by block, one child process per measured stage.
"""
