"""nim_async: deploy NVIDIA NIM vision-language containers and run inference against them."""
