"""The product: API LPS front, delegation enforcement, backends, historic web services."""
