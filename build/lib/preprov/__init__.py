"""preprov: the server side of SIP phone pre-provisioning."""
