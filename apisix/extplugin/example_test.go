package extplugin_test

import (
	"fmt"

	"github.com/graylane/graylane/apisix/extplugin"
)

// A conf as a route carries it, and one with a mistake.
func ExampleParseConf() {
	c, err := extplugin.ParseConf([]byte(`{"service":"bservice","sticky_cookie":"uid","trusted_cidrs":["10.0.0.0/8"]}`))
	fmt.Println(c.Service, c.StickyCookie, c.LaneHeader(), err)
	_, err = extplugin.ParseConf([]byte(`{"service":"bservice","trusted_cidrs":["10.0.0.0/33"]}`))
	fmt.Println(err)
	// Output:
	// bservice uid x-md-global-gray-lane <nil>
	// graylane conf: trusted_cidrs[0]: "10.0.0.0/33" is neither a CIDR nor an address
}
