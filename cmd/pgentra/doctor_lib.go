package main

// A stand-in for entraauth.InspectToken and entraauth.Explain until they
// land on main; the doctor calls them through these names.

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgentra/entraauth"
)

type tokenInfo struct {
	Name, NameClaim, ObjectID, TenantID, AppID, Type, Audience, Issuer string
	IssuedAt, NotBefore, ExpiresOn                                     time.Time
}

func inspectToken(tok string) (tokenInfo, error) {
	var c struct {
		jwt.RegisteredClaims
		UPN       string `json:"upn"`
		Preferred string `json:"preferred_username"`
		Unique    string `json:"unique_name"`
		OID       string `json:"oid"`
		TID       string `json:"tid"`
		AppID     string `json:"appid"`
		AZP       string `json:"azp"`
		IDTyp     string `json:"idtyp"`
		MIRID     string `json:"xms_mirid"`
	}
	if _, _, err := jwt.NewParser().ParseUnverified(tok, &c); err != nil && !errors.Is(err, jwt.ErrTokenUnverifiable) {
		return tokenInfo{}, fmt.Errorf("%w: not a JWT", entraauth.ErrMalformedToken)
	}
	info := tokenInfo{ObjectID: c.OID, TenantID: c.TID, AppID: c.AppID, Issuer: c.Issuer}
	if info.AppID == "" {
		info.AppID = c.AZP
	}
	for _, n := range []struct{ claim, v string }{{"upn", c.UPN}, {"preferred_username", c.Preferred}, {"unique_name", c.Unique}} {
		if n.v != "" {
			info.Name, info.NameClaim = n.v, n.claim
			break
		}
	}
	if len(c.Audience) > 0 {
		info.Audience = c.Audience[0]
	}
	if c.IssuedAt != nil {
		info.IssuedAt = c.IssuedAt.Time
	}
	if c.NotBefore != nil {
		info.NotBefore = c.NotBefore.Time
	}
	if c.ExpiresAt != nil {
		info.ExpiresOn = c.ExpiresAt.Time
	}
	switch {
	case c.MIRID != "":
		info.Type = "managed identity"
	case info.Name != "" || c.IDTyp == "user":
		info.Type = "user"
	default:
		info.Type = "service principal or managed identity"
	}
	return info, nil
}

type loginError struct {
	Err                         error
	User, UserSource            string
	Token                       tokenInfo
	Reading, Fix, CreateRoleSQL string
}

func (e *loginError) Error() string { return e.Err.Error() }

func explain(err error, user, userSource string, info tokenInfo) *loginError {
	le := &loginError{Err: err, User: user, UserSource: userSource, Token: info}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return le
	}
	if pgErr.Code == "28P01" && strings.HasPrefix(pgErr.Message, "password authentication failed") {
		le.Reading = fmt.Sprintf("the server refused user %q with this token; Azure answers the same for a role that does not exist and for one created for another principal, so whether role %q exists cannot be told from outside", user, user)
		le.Fix = "have an Entra administrator of the server create the role for this principal (the SQL below), or log in as a role created for it"
		name := user
		if info.Type == "user" && info.Name != "" {
			name = info.Name
		}
		q := strings.ReplaceAll(name, "'", "''")
		if info.Type == "user" {
			le.CreateRoleSQL = fmt.Sprintf("select * from pgaadauth_create_principal('%s', false, false);", q)
		} else {
			le.CreateRoleSQL = fmt.Sprintf("select * from pgaadauth_create_principal_with_oid('%s', '%s', 'service', false, false);", q, info.ObjectID)
		}
		if info.Name != "" && !strings.EqualFold(info.Name, user) {
			le.Reading += fmt.Sprintf("; the name sent comes from %s and is not the token's principal, %s (%s claim)", userSource, info.Name, info.NameClaim)
			le.Fix = fmt.Sprintf("log in as the token's principal: unset or change %s so that %s is sent, unless %s is a group role %s belongs to", userSource, info.Name, user, info.Name)
		}
	}
	return le
}
