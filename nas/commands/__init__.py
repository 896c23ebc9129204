"""One module per `nas` command: parse flags, call one library function, print. Only `nas.cli` imports them."""
