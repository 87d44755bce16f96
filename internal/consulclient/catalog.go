package consulclient

// ConsulsOwnAddress reports whether a tagged address is one Consul keeps itself.
func ConsulsOwnAddress(tag string) bool {
	switch tag {
	case "lan_ipv4", "wan_ipv4", "lan_ipv6", "wan_ipv6", "lan", "wan":
		return true
	}
	return false
}
