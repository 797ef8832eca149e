package entraauth

import "strings"

// Scopes of Azure Database for PostgreSQL tokens, one per Azure cloud.
const (
	ScopePublic = "https://ossrdbms-aad.database.windows.net/.default"
	ScopeChina  = "https://ossrdbms-aad.database.chinacloudapi.cn/.default"
	ScopeUSGov  = "https://ossrdbms-aad.database.usgovcloudapi.net/.default"
)

// cloud is what differs between Azure clouds: the database token scope, the
// Azure Resource Manager scope (for managed identity names) and the host
// name suffix of the cloud's PostgreSQL servers.
type cloud struct {
	hostSuffix string
	dbScope    string
	armScope   string
}

var clouds = []cloud{
	{".postgres.database.chinacloudapi.cn", ScopeChina, "https://management.chinacloudapi.cn/.default"},
	{".postgres.database.usgovcloudapi.net", ScopeUSGov, "https://management.usgovcloudapi.net/.default"},
}

var publicCloud = cloud{".postgres.database.azure.com", ScopePublic, "https://management.azure.com/.default"}

// ScopeForHost returns the database token scope for a server host name: the
// China or US Government scope for those clouds' server names, and the
// public cloud scope for every other host (localhost and IP addresses too).
func ScopeForHost(host string) string { return cloudForHost(host).dbScope }

// cloudForHost returns the cloud of a server host name. The result points
// into the package's tables, so its fields' addresses can be shared.
func cloudForHost(host string) *cloud {
	h := strings.TrimSuffix(host, ".")
	for i := range clouds {
		if hasSuffixFold(h, clouds[i].hostSuffix) {
			return &clouds[i]
		}
	}
	return &publicCloud
}

// hasSuffixFold is strings.HasSuffix ignoring ASCII case, without
// allocating (it runs on every connect).
func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && strings.EqualFold(s[len(s)-len(suffix):], suffix)
}

// armScopeFor returns the Azure Resource Manager scope of the cloud whose
// database scope is dbScope (the public cloud's for a custom scope).
func armScopeFor(dbScope string) string {
	for _, c := range clouds {
		if c.dbScope == dbScope {
			return c.armScope
		}
	}
	return publicCloud.armScope
}
