package entratest_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sort"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/pgentra/entraauth/entratest"
)

// Mint a database token for a user and check it as Azure would.
func ExampleNewIssuer() {
	iss, err := entratest.NewIssuer()
	if err != nil {
		log.Fatal(err)
	}
	tok, err := iss.Mint(entratest.User("alice@contoso.com"), entratest.ScopePublic, time.Hour)
	if err != nil {
		log.Fatal(err)
	}
	claims, err := iss.Verify(tok.Token, entratest.ScopePublic)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("aud:", claims["aud"])
	fmt.Println("upn:", claims["upn"])
	fmt.Println("iss is the issuer's:", claims["iss"] == iss.IssuerURL())

	// The same token is no good for another cloud.
	_, err = iss.Verify(tok.Token, entratest.ScopeChina)
	fmt.Println("China:", errors.Is(err, entratest.ErrWrongAudience))
	// Output:
	// aud: https://ossrdbms-aad.database.windows.net
	// upn: alice@contoso.com
	// iss is the issuer's: true
	// China: true
}

// A managed identity's database token has no name claim; its Azure Resource
// Manager token names the identity in xms_mirid.
func ExampleIssuer_Mint() {
	iss, err := entratest.NewIssuer()
	if err != nil {
		log.Fatal(err)
	}
	mi := entratest.ManagedIdentity("orders-api")
	for _, scope := range []string{entratest.ScopePublic, entratest.ScopeARMPublic} {
		tok, err := iss.Mint(mi, scope, time.Hour)
		if err != nil {
			log.Fatal(err)
		}
		claims, err := iss.Verify(tok.Token, scope)
		if err != nil {
			log.Fatal(err)
		}
		var names []string
		for k := range claims {
			names = append(names, k)
		}
		sort.Strings(names)
		fmt.Println(claims["aud"], names)
	}
	// Output:
	// https://ossrdbms-aad.database.windows.net [appid aud azp exp iat idtyp iss nbf oid sub tid ver]
	// https://management.azure.com [appid aud azp exp iat idtyp iss nbf oid sub tid ver xms_mirid]
}

// A fake credential in place of azidentity's, here made to fail.
func ExampleNewCredential() {
	iss, err := entratest.NewIssuer()
	if err != nil {
		log.Fatal(err)
	}
	cred := entratest.NewCredential(iss, entratest.User("alice@contoso.com"))
	cred.SetLifetime(10 * time.Minute)

	ctx := context.Background()
	opts := policy.TokenRequestOptions{Scopes: []string{entratest.ScopePublic}}
	tok, err := cred.GetToken(ctx, opts)
	if err != nil {
		log.Fatal(err)
	}
	_, err = iss.Verify(tok.Token, entratest.ScopePublic)
	fmt.Println("verified:", err == nil)

	cred.FailWith(errors.New("AADSTS700082: the refresh token has expired"))
	_, err = cred.GetToken(ctx, opts)
	fmt.Println("error:", err)

	fmt.Println("calls:", cred.Calls())
	fmt.Println("scopes:", cred.Scopes())
	// Output:
	// verified: true
	// error: AADSTS700082: the refresh token has expired
	// calls: 2
	// scopes: [https://ossrdbms-aad.database.windows.net/.default https://ossrdbms-aad.database.windows.net/.default]
}
